"""The fake upstream's tokenizer, prompt caching and context limit, driven through the SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.testing.fake_cache import anthropic_segments
from chatd.testing.fake_tokens import prompt_tokens
from chatd.testing.fake_upstream import FakeUpstream
from chatd.testing.fake_wire import count_text, count_tokens

CLAUDE = "claude-test"
GPT = "gpt-test"
EPHEMERAL = {"type": "ephemeral"}


@pytest.fixture
def claude(fake_upstream: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="k", base_url=fake_upstream.url, max_retries=0) as client:
        yield client


@pytest.fixture
def gpt(fake_upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    url = fake_upstream.url + "/v1"
    with openai.OpenAI(api_key="k", base_url=url, max_retries=0) as client:
        yield client


def words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


def cached_system(n: int) -> list[dict[str, Any]]:
    return [{"type": "text", "text": words(n, "rule"), "cache_control": EPHEMERAL}]


def create(client: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Usage:
    kwargs.setdefault("model", CLAUDE)
    kwargs.setdefault("max_tokens", 100)
    message: anthropic.types.Message = client.messages.create(**kwargs)
    return message.usage


def split(usage: anthropic.types.Usage) -> tuple[int | None, int | None, int]:
    """Return (cache read, cache write, fresh input) as the fake reported them."""
    return usage.cache_read_input_tokens, usage.cache_creation_input_tokens, usage.input_tokens


def user(text: str, *, cache: bool = False) -> Any:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cache:
        block["cache_control"] = EPHEMERAL
    return {"role": "user", "content": [block]}


# ---- The tokenizer ---------------------------------------------------------------------------


def test_count_text_is_words_and_punctuation() -> None:
    assert count_text("Hello, world!") == 4
    assert count_text("it's 3.5 km") == 7  # it ' s 3 . 5 km
    assert count_text("snake_case and x2") == 3
    assert count_text("") == 0
    assert count_text("  \n\t ") == 0


def test_count_tokens_counts_tools_system_and_messages_with_overhead() -> None:
    body = {
        "model": CLAUDE,
        "max_tokens": 9,
        "system": "Be brief.",  # 3
        "tools": [
            {
                "name": "get_weather",  # 1
                "description": "Weather by city.",  # 4
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        "messages": [
            {"role": "user", "content": "Hello, world!"},  # 3 + 4
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},  # 3 + 4
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                ],  # + 2 (id, name)
            },
        ],
    }
    assert count_tokens(body) == 3 + 5 + 7 + 9


def test_sdk_usage_reports_the_exact_count(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    usage = create(claude, system="Be brief.", messages=[user("Hello, world!")])
    assert split(usage) == (0, 0, 3 + 3 + 4)
    completion = gpt.chat.completions.create(
        model=GPT,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello, world!"},
        ],
    )
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == (3 + 3) + (3 + 4)
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_blocks = st.lists(
    st.fixed_dictionaries(
        {"type": st.just("text"), "text": _texts},
        optional={"cache_control": st.just(EPHEMERAL)},
    ),
    max_size=3,
)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]), "content": st.one_of(_texts, _blocks)}
    ),
    min_size=1,
    max_size=4,
)


@given(
    system=st.one_of(st.none(), _texts, _blocks),
    messages=_messages,
    tools=st.lists(st.fixed_dictionaries({"name": _texts, "description": _texts}), max_size=2),
)
def test_segments_and_prompt_tokens_agree_with_count_tokens(
    system: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> None:
    body: dict[str, Any] = {"messages": messages, "tools": tools}
    if system is not None:
        body["system"] = system
    total = count_tokens(body)
    assert len(prompt_tokens(body)) == total
    marks = sum(
        "cache_control" in b
        for m in messages
        if isinstance(m["content"], list)
        for b in m["content"]
    )
    marks += sum("cache_control" in b for b in system) if isinstance(system, list) else 0
    if marks <= 4:
        assert sum(segment.tokens for segment in anthropic_segments(body)) == total


# ---- Anthropic prompt caching ----------------------------------------------------------------


def test_anthropic_first_request_writes_and_second_reads(claude: anthropic.Anthropic) -> None:
    system = cached_system(1100)
    messages = [user("Hello, world!")]
    assert split(create(claude, system=system, messages=messages)) == (0, 1100, 7)
    assert split(create(claude, system=system, messages=messages)) == (1100, 0, 7)
    # A different tail after the same cached prefix still reads it.
    assert split(create(claude, system=system, messages=[user("Other")])) == (1100, 0, 4)


def test_anthropic_stream_reports_the_split_in_message_start(
    claude: anthropic.Anthropic,
) -> None:
    system = cached_system(1030)
    kwargs: Any = {"model": CLAUDE, "max_tokens": 100, "system": system}
    create(claude, messages=[user("one")], **kwargs)
    with claude.messages.stream(messages=[user("two")], **kwargs) as stream:
        final = stream.get_final_message()
    assert split(final.usage) == (1030, 0, 4)


def test_anthropic_order_is_tools_system_messages_and_breakpoints_prefix_it(
    claude: anthropic.Anthropic,
) -> None:
    tools: Any = [
        {"name": "lookup", "description": words(600), "input_schema": {"type": "object"}},
        {
            "name": "search",
            "description": words(600),
            "input_schema": {"type": "object"},
            "cache_control": EPHEMERAL,
        },
    ]
    # Tools (1 + 600 each) are cached; the system after the breakpoint is fresh input.
    usage = create(claude, tools=tools, system="Be brief.", messages=[user("hi")])
    assert split(usage) == (0, 1202, 3 + 4)
    # Changing the system after the breakpoint keeps the hit; changing a tool loses it.
    assert split(create(claude, tools=tools, system="Short.", messages=[user("hi")]))[0] == 1202
    tools[0]["description"] += " more"
    assert split(create(claude, tools=tools, system="Be brief.", messages=[user("hi")])) == (
        0,
        1203,
        7,
    )


def test_anthropic_conversation_reads_the_last_turn_and_writes_the_new_one(
    claude: anthropic.Anthropic,
) -> None:
    system = cached_system(1100)
    first = [user(words(10), cache=True)]
    # 1100 system + (3 + 10) message, all up to the breakpoint.
    assert split(create(claude, system=system, messages=first)) == (0, 1113, 0)
    history = [
        user(words(10)),
        {"role": "assistant", "content": "Sure thing."},  # 3 + 3
        user(words(20), cache=True),  # 3 + 20
    ]
    # The breakpoint moved; the lookback finds the old one's prefix and writes only the rest.
    assert split(create(claude, system=system, messages=history)) == (1113, 6 + 23, 0)
    history.append({"role": "assistant", "content": "Done."})  # 3 + 2
    history.append(user("thanks"))  # 3 + 1
    # The same breakpoint again: all of it is read, the two new messages are fresh input.
    assert split(create(claude, system=system, messages=history)) == (1142, 0, 5 + 4)
    history[2] = user(words(20))
    # Only the system's breakpoint is left: the longer cached prefixes are not looked up.
    assert split(create(claude, system=system, messages=history)) == (1100, 0, 13 + 29 + 9)


def test_anthropic_lookback_is_twenty_blocks(claude: anthropic.Anthropic) -> None:
    # Cache the system block alone, then ask with the breakpoint on a later block only.
    create(claude, system=cached_system(1100), messages=[user("start")])
    system = [{"type": "text", "text": words(1100, "rule")}]

    def ask(fillers: int) -> tuple[int | None, int | None, int]:
        turns = [user("start")]
        turns += [{"role": ("assistant", "user")[i % 2], "content": "ok"} for i in range(fillers)]
        return split(create(claude, system=system, messages=[*turns, user("end", cache=True)]))

    # Blocks: system, start, the fillers, end. The system block is 20 blocks before the
    # breakpoint with 18 fillers (found) and 21 with 19 (not found, so all of it is written).
    assert ask(18) == (1100, 4 + 18 * 4 + 4, 0)
    assert ask(19) == (0, 1100 + 4 + 19 * 4 + 4, 0)


def test_anthropic_minimum_cacheable_length(claude: anthropic.Anthropic) -> None:
    system = cached_system(1023)
    # 1023 tokens: under Anthropic's 1024 minimum, so nothing is cached and nothing fails.
    assert split(create(claude, system=system, messages=[user("hi")])) == (0, 0, 1027)
    assert split(create(claude, system=system, messages=[user("hi")])) == (0, 0, 1027)
    small = cached_system(50)
    text = "hi [fake: cache_min=50]"
    fresh = 3 + count_text(text)
    assert split(create(claude, system=small, messages=[user(text)])) == (0, 50, fresh)
    assert split(create(claude, system=small, messages=[user(text)])) == (50, 0, fresh)


def test_anthropic_constructor_cache_min() -> None:
    with (
        FakeUpstream(cache_min=10) as fake,
        anthropic.Anthropic(api_key="k", base_url=fake.url, max_retries=0) as client,
    ):
        assert split(create(client, system=cached_system(10), messages=[user("hi")])) == (0, 10, 4)


def test_anthropic_at_most_four_breakpoints(claude: anthropic.Anthropic) -> None:
    messages = [user(f"part {i}", cache=True) for i in range(4)]
    create(claude, messages=messages)
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(claude, system=cached_system(3), messages=messages)
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        },
        "request_id": caught.value.body["request_id"],  # type: ignore[index]
    }


@pytest.mark.parametrize(
    "control", [{"type": "persistent"}, {"type": "ephemeral", "ttl": "10m"}, "ephemeral"]
)
def test_anthropic_malformed_cache_control_is_400(
    claude: anthropic.Anthropic, control: Any
) -> None:
    system: Any = [{"type": "text", "text": "x", "cache_control": control}]
    with pytest.raises(anthropic.BadRequestError, match="cache_control"):
        create(claude, system=system, messages=[user("hi")])


def test_anthropic_entries_live_five_minutes_refreshed_by_reads(
    claude: anthropic.Anthropic, fake_upstream: FakeUpstream
) -> None:
    system = cached_system(1100)
    messages = [user("hi")]
    assert split(create(claude, system=system, messages=messages))[1] == 1100
    fake_upstream.advance_clock(299)
    assert split(create(claude, system=system, messages=messages))[0] == 1100
    fake_upstream.advance_clock(299)  # 598 s after the write, 299 after the read
    assert split(create(claude, system=system, messages=messages))[0] == 1100
    fake_upstream.advance_clock(301)
    assert split(create(claude, system=system, messages=messages)) == (0, 1100, 4)


def test_anthropic_one_hour_ttl(claude: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    system: Any = [
        {"type": "text", "text": words(1100), "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    create(claude, system=system, messages=[user("hi")])
    fake_upstream.advance_clock(3000)
    assert split(create(claude, system=system, messages=[user("hi")]))[0] == 1100
    fake_upstream.advance_clock(3601)
    assert split(create(claude, system=system, messages=[user("hi")]))[0] == 0


def test_anthropic_cache_is_per_key_and_model(
    claude: anthropic.Anthropic, fake_upstream: FakeUpstream
) -> None:
    system = cached_system(1100)
    create(claude, system=system, messages=[user("hi")])
    assert split(create(claude, model="claude-other", system=system, messages=[user("hi")])) == (
        0,
        1100,
        4,
    )
    with anthropic.Anthropic(api_key="k2", base_url=fake_upstream.url, max_retries=0) as other:
        assert split(create(other, system=system, messages=[user("hi")]))[0] == 0


def test_failed_requests_do_not_cache(claude: anthropic.Anthropic) -> None:
    system = cached_system(1100)
    with pytest.raises(anthropic.InternalServerError):
        create(claude, system=system, messages=[user("hi [fake: status=500]")])
    assert split(create(claude, system=system, messages=[user("hi")]))[1] == 1100


def test_usage_directives_still_override_the_split(claude: anthropic.Anthropic) -> None:
    usage = create(claude, system=cached_system(1100), messages=[user("x [fake: cache_read=7]")])
    assert split(usage)[0:2] == (7, 1100)


def test_clock_route_advances_the_clock(fake_upstream: FakeUpstream) -> None:
    with httpx.Client(base_url=fake_upstream.url) as raw:
        before = raw.get("/_fake/clock").json()["offset"]
        assert raw.post("/_fake/clock", json={"advance": 60}).json() == {"offset": before + 60}
        assert raw.post("/_fake/clock", json={"advance": -1}).status_code == 400
    assert fake_upstream.requests == []


# ---- OpenAI automatic prefix caching ---------------------------------------------------------


def chat(client: openai.OpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> tuple[int, int]:
    """Return (prompt_tokens, cached_tokens) of a completion."""
    kwargs.setdefault("model", GPT)
    usage = client.chat.completions.create(messages=messages, **kwargs).usage  # type: ignore[arg-type]
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    return usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0


def test_openai_caches_prefixes_from_1024_tokens_in_steps_of_128(gpt: openai.OpenAI) -> None:
    system = {"role": "system", "content": words(1300)}  # 3 + 1300 tokens
    first = [system, {"role": "user", "content": "hi"}]
    assert chat(gpt, first) == (1307, 0)
    # 1024 + 2 * 128 = 1280 <= the 1303 shared tokens < 1408.
    assert chat(gpt, first) == (1307, 1280)
    longer = [
        *first,
        {"role": "assistant", "content": words(200)},
        {"role": "user", "content": "ok"},
    ]
    assert chat(gpt, longer) == (1307 + 203 + 4, 1280)
    assert chat(gpt, longer) == (1514, 1024 + 3 * 128)


def test_openai_prompts_under_1024_tokens_are_not_cached(gpt: openai.OpenAI) -> None:
    short = [{"role": "user", "content": words(1017)}]  # 1020 tokens
    assert chat(gpt, short) == (1020, 0)
    assert chat(gpt, short) == (1020, 0)
    small = [{"role": "user", "content": words(300) + " [fake: cache_min=256]"}]
    total = 3 + 300 + count_text("[fake: cache_min=256]")
    assert chat(gpt, small) == (total, 0)
    assert chat(gpt, small) == (total, 256)


def test_openai_entries_expire_after_five_idle_minutes(
    gpt: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    messages = [{"role": "user", "content": words(1100)}]
    chat(gpt, messages)
    fake_upstream.advance_clock(299)
    assert chat(gpt, messages)[1] == 1024
    fake_upstream.advance_clock(299)
    assert chat(gpt, messages)[1] == 1024
    fake_upstream.advance_clock(301)
    assert chat(gpt, messages)[1] == 0


def test_openai_cache_is_per_key_and_model(gpt: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    messages = [{"role": "user", "content": words(1100)}]
    chat(gpt, messages)
    assert chat(gpt, messages, model="gpt-other")[1] == 0
    url = fake_upstream.url + "/v1"
    with openai.OpenAI(api_key="k2", base_url=url, max_retries=0) as other:
        assert chat(other, messages)[1] == 0
    assert chat(gpt, messages)[1] == 1024


# ---- Context-length limit --------------------------------------------------------------------


def test_anthropic_prompt_too_long(claude: anthropic.Anthropic) -> None:
    text = "hi [fake: context_limit=20]"
    base = 1 + 3 + count_text(text)  # system "x", the message's overhead and text
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(claude, system="x", messages=[user(f"{text} {words(21 - base)}")])
    error = caught.value.body["error"]  # type: ignore[index]
    assert error == {
        "type": "invalid_request_error",
        "message": "prompt is too long: 21 tokens > 20 maximum",
    }
    # Exactly at the limit is served.
    usage = create(claude, system="x", messages=[user(f"{text} {words(20 - base)}")])
    assert usage.input_tokens == 20


def test_openai_context_length_exceeded(gpt: openai.OpenAI) -> None:
    text = "hi [fake: context_limit=12] " + words(5)
    total = 3 + count_text(text)
    with pytest.raises(openai.BadRequestError) as caught:
        chat(gpt, [{"role": "user", "content": text}])
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert caught.value.type == "invalid_request_error"
    assert caught.value.body == {
        "message": f"This model's maximum context length is 12 tokens. However, your messages "
        f"resulted in {total} tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


def test_context_limit_defaults_and_setting(
    claude: anthropic.Anthropic,
    gpt: openai.OpenAI,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = words(128_000)
    # 3 + 128,000 is over OpenAI's 128k default and under Anthropic's 200k.
    assert create(claude, messages=[user(big)]).input_tokens == 128_003
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128000 tokens"):
        chat(gpt, [{"role": "user", "content": big}])
    monkeypatch.setattr(fake_upstream.app, "context_limit", 10)
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long: 13 tokens > 10"):
        create(claude, messages=[user(words(10))])
    assert create(claude, messages=[user(words(7))]).input_tokens == 10


def test_constructor_context_limit_and_fault_order() -> None:
    with (
        FakeUpstream(context_limit=5) as fake,
        openai.OpenAI(api_key="k", base_url=fake.url + "/v1", max_retries=0) as client,
    ):
        # The limit is checked before any fault directive fires.
        with pytest.raises(openai.BadRequestError, match="context length is 5 tokens"):
            chat(client, [{"role": "user", "content": "x [fake: status=500]"}])
        assert chat(client, [{"role": "user", "content": "x y"}]) == (5, 0)
