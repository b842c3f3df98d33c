"""Context views through the engine: moves, summaries, overflow, and counted sizes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select

from chatd.engine import ChatService, TurnOptions
from chatd.engine.summarize import SUMMARY_PROMPT, SummaryConfig
from chatd.store import SqlStore
from chatd.store.tables import context_folds
from chatd.testing.fake_upstream import FakeUpstream, RecordedRequest
from chatd.types import ContextChanged, GenerationParams, TurnEnded, TurnEvent, TurnState

ServiceFactory = Callable[..., Awaitable[ChatService]]


async def run(service: ChatService, session: str, text: str) -> list[TurnEvent]:
    """Run a turn to the end and return its events."""
    return [e async for e in service.turn(session, text, TurnOptions())]


def ended(events: list[TurnEvent]) -> TurnEnded:
    """Return the turn's final event."""
    assert isinstance(events[-1], TurnEnded)
    return events[-1]


def changes(events: list[TurnEvent]) -> list[ContextChanged]:
    """Return the turn's context events."""
    return [e for e in events if isinstance(e, ContextChanged)]


def is_summary_call(request: RecordedRequest) -> bool:
    """Tell whether chatd sent this request to write a summary."""
    last = request.body["messages"][-1]
    content = last["content"]
    text = content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)
    return text.startswith(SUMMARY_PROMPT)


def replies(fake: FakeUpstream) -> list[RecordedRequest]:
    """Return the model calls that answered the user (not summaries)."""
    return [r for r in fake.requests if r.path.endswith(("/messages", "/completions"))]


def conversation(request: RecordedRequest) -> list[dict[str, Any]]:
    """Return the request's user and assistant messages (OpenAI system messages left out)."""
    return [m for m in request.body["messages"] if m["role"] in ("user", "assistant")]


def text_of(message: dict[str, Any]) -> str:
    """Return a wire message's text."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


def prompt(r: RecordedRequest) -> int:
    """Return the prompt's size the fake billed: on OpenAI's wire cache reads are inside."""
    u = r.usage
    if r.path.endswith("/messages"):
        return int(u["input_tokens"] + u["cache_read"] + u["cache_write"])
    return int(u["input_tokens"])


def summary_sent(request: RecordedRequest) -> str | None:
    """Return the summary a request carried after the system prompt, if any."""
    body = request.body
    if isinstance(body.get("system"), list):
        texts = [b["text"] for b in body["system"]]
    else:
        texts = [m["content"] for m in body["messages"] if m["role"] == "system"]
    found = [t for t in texts if t.startswith("Summary of the earlier conversation")]
    return found[0] if found else None


async def test_a_conversation_far_past_the_context_limit_never_fails(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    # The model's window is not known to chatd: the first refusal teaches it, visibly.
    fake_upstream.app.context_limit = 600
    try:
        events = [await run(service, "long", f"question {n} [fake: words=40]") for n in range(30)]
    finally:
        fake_upstream.app.context_limit = None
    assert all(ended(e).state is TurnState.COMPLETE for e in events)
    reasons = [c.reason for e in events for c in changes(e)]
    assert reasons.count("overflow") == 1
    assert "limit" in reasons
    assert all(prompt(r) <= 600 for r in fake_upstream.requests if r.usage)
    # After the one refusal, every prompt was cut before it was sent.
    refused = [r for r in fake_upstream.requests if not r.usage]
    assert len(refused) == 1


async def test_the_context_event_comes_exactly_when_the_view_moves(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    params = GenerationParams(context_policy="window", context_limit=6)
    await service.store.ensure_session("local", "w", params=params)
    previous_first: str | None = None
    moves = 0
    for n in range(14):
        events = await run(service, "w", f"question {n}")
        sent = conversation(fake_upstream.requests[-1])
        first = text_of(sent[0])
        changed = changes(events)
        moved = previous_first is not None and first != previous_first
        assert bool(changed) == moved, f"turn {n}"
        if changed:
            moves += 1
            assert changed[0].kept_messages == len(sent)
            assert changed[0].reason == "limit"
            assert not changed[0].summarized
        previous_first = first
        assert len(sent) <= 6
    # In steps: a 6-message window moves every other turn, not every turn.
    assert 3 <= moves <= 7


async def test_summaries_are_stored_apart_and_the_history_stays_whole(
    service: ChatService, fake_upstream: FakeUpstream, db_store: SqlStore
) -> None:
    params = GenerationParams(context_policy="summary", context_limit=4)
    await service.store.ensure_session("local", "s", params=params)
    events = [await run(service, "s", f"fact number {n}") for n in range(12)]
    summarized = [c for e in events for c in changes(e) if c.summarized]
    assert summarized, "a summary was written"
    # Every turn and message is still there, readable and exportable.
    turns = await service.store.list_turns("local", "s")
    assert [t.messages[0].text for t in turns] == [f"fact number {n}" for n in range(12)]
    assert len(await service.store.context_messages("local", "s")) == 24
    info = await service.store.get_session("local", "s")
    assert info is not None
    assert info.fold.summary
    assert info.fold.first_turn > 1
    folds = await db_store.db.read(
        lambda conn: conn.execute(select(func.count()).select_from(context_folds)).scalar_one()
    )
    assert folds == len([c for e in events for c in changes(e)])
    # The summary call was made through the provider, and the next call carries its text.
    summary_calls = [r for r in fake_upstream.requests if is_summary_call(r)]
    assert len(summary_calls) == len(summarized)
    last = [r for r in replies(fake_upstream) if not is_summary_call(r)][-1]
    carried = summary_sent(last)
    assert carried is not None
    assert info.fold.summary in carried
    # The model always sees at least the last 4 messages (and at most 12) besides it.
    assert 4 <= len(conversation(last)) - 1 <= 12


async def test_a_summary_call_is_charged_to_its_turn(
    make_service: ServiceFactory, fake_upstream: FakeUpstream
) -> None:
    service = await make_service("anthropic")
    params = GenerationParams(context_policy="summary", context_limit=2)
    await service.store.ensure_session("local", "c", params=params)
    for n in range(3):
        await run(service, "c", f"point {n}")
    events = await run(service, "c", "point 3")
    assert changes(events)
    assert changes(events)[0].summarized
    charged = ended(events).usage
    summary_call, reply_call = fake_upstream.requests[-2], fake_upstream.requests[-1]
    assert is_summary_call(summary_call)
    assert charged.output_tokens == (
        summary_call.usage["output_tokens"] + reply_call.usage["output_tokens"]
    )


async def test_message_sizes_are_what_the_provider_counted(
    service: ChatService, fake_upstream: FakeUpstream
) -> None:
    for text in ("first question", "a second, longer question: how far?", "third"):
        await run(service, "t", text)
    calls = [r for r in fake_upstream.requests if r.usage]

    turns = await service.store.list_turns("local", "t")
    for k in (1, 2):
        user_tokens, reply_tokens = turns[k].tokens[0], turns[k - 1].tokens[1]
        # The reply costs what the provider billed for writing it; the user message, the
        # rest of the prompt's growth between the two calls.
        assert reply_tokens == calls[k - 1].usage["output_tokens"]
        assert user_tokens is not None
        assert reply_tokens is not None
        assert user_tokens + reply_tokens == prompt(calls[k]) - prompt(calls[k - 1])
    # The first message's size needs a prompt before it to be told apart from the system's.
    assert turns[0].tokens[0] is None


async def test_a_prompt_estimated_past_the_window_is_counted_by_the_provider_where_configured(
    make_service: ServiceFactory, fake_upstream: FakeUpstream
) -> None:
    # Long words: chatd's estimate (about four characters a token) is several times what the
    # provider counts, so the estimate alone would cut the first turn out of the view.
    long_text = " ".join(["incomprehensibilities"] * 600)
    for count in (False, True):
        service = await make_service(
            "anthropic",
            context_window=2000,
            count_tokens=count,
            defaults=GenerationParams(max_tokens=100),
        )
        session = f"counted-{count}"
        await run(service, session, "hello there")
        events = await run(service, session, long_text)
        # The reply quotes the message: cut at max_tokens.
        assert ended(events).state is TurnState.TRUNCATED
        sent = conversation(fake_upstream.requests[-1])
        counts = [r for r in fake_upstream.requests if r.path.endswith("/count_tokens")]
        if count:
            assert not changes(events)
            assert len(sent) == 3
            assert len(counts) == 1
        else:
            assert changes(events)
            assert len(sent) == 1
            assert not counts


async def test_summaries_are_written_by_the_configured_cheaper_model(
    make_service: ServiceFactory, fake_upstream: FakeUpstream
) -> None:
    service = await make_service("openai", summaries=SummaryConfig(model="cheap-model"))
    params = GenerationParams(context_policy="summary", context_limit=2)
    await service.store.ensure_session("local", "cheap", params=params)
    for n in range(4):
        await run(service, "cheap", f"point {n}")
    summary_calls = [r for r in fake_upstream.requests if is_summary_call(r)]
    assert summary_calls
    assert {r.body["model"] for r in summary_calls} == {"cheap-model"}
    replies_sent = [r for r in fake_upstream.requests if not is_summary_call(r)]
    assert {r.body["model"] for r in replies_sent} == {"test-model"}
    # Another model shares no cache with the conversation: it gets the folded turns alone.
    assert "stay in view" not in text_of(summary_calls[0].body["messages"][-1])
