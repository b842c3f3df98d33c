"""A reply stored in parts goes out as one assistant message, continued as each provider says."""

from __future__ import annotations

from chatd.providers.anthropic import request_body
from chatd.providers.base import joined_replies
from chatd.providers.openai_compat import CONTINUE_PROMPT, messages_body
from chatd.types import (
    ChatRequest,
    Message,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)

CALL = ToolCallPart("c1", "calculate", {"expression": "1+1"})
RESULT = Message(Role.USER, (ToolResultPart("c1", "2"),))


def request(*messages: Message, continuation: bool = False) -> ChatRequest:
    """Return a request of these messages."""
    return ChatRequest("m", tuple(messages), 64, continuation=continuation)


def test_consecutive_assistant_messages_are_joined_text_first_then_calls() -> None:
    stored = [
        Message.user("go"),
        Message.assistant("part one, "),
        Message(Role.ASSISTANT, (TextPart("part two."), CALL)),
        RESULT,
        Message.assistant("done"),
        Message.assistant(" really"),
    ]
    assert joined_replies(stored) == [
        Message.user("go"),
        Message(Role.ASSISTANT, (TextPart("part one, part two."), CALL)),
        RESULT,
        Message.assistant("done really"),
    ]
    # Nothing to join: the same messages.
    assert joined_replies(stored[:2]) == stored[:2]


def test_anthropic_sends_a_final_assistant_message_as_a_prefill_without_trailing_space() -> None:
    body = request_body(
        request(Message.user("q"), Message.assistant("a "), Message.assistant("b\n"))
    )
    assert body["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a b"},
    ]
    # A prefill of whitespace only is no prefill: the model answers the user message afresh.
    blank = request_body(request(Message.user("q"), Message.assistant(" \n")))
    assert blank["messages"] == [{"role": "user", "content": "q"}]
    # Whitespace inside a reply in the history is kept as it was.
    later = request_body(request(Message.user("q"), Message.assistant("a \n"), Message.user("r")))
    assert later["messages"][1] == {"role": "assistant", "content": "a \n"}


def test_openai_asks_for_the_rest_only_when_continuing_a_reply() -> None:
    cut = (Message.user("q"), Message.assistant("a "), Message.assistant("b"))
    assert messages_body(request(*cut, continuation=True)) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a b"},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    assert messages_body(request(*cut))[-1] == {"role": "assistant", "content": "a b"}
    # A continuation's later round ends with tool results: nothing is added to it.
    rounds = (*cut[:2], Message(Role.ASSISTANT, (TextPart("b"), CALL)), RESULT)
    sent = messages_body(request(*rounds, continuation=True))
    assert sent[-1] == {"role": "tool", "tool_call_id": "c1", "content": "2"}
    assert sent[1]["content"] == "a b"
