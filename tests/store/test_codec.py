"""The message codec: anything encodes to plain JSON and back; malformed input is refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.errors import InputError
from chatd.store.codec import message_from_dict, message_to_dict
from chatd.types import Message, Role, TextPart, ToolCallPart, ToolResultPart

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
PARTS = st.one_of(
    st.builds(TextPart, st.text()),
    st.builds(
        ToolCallPart,
        st.text(max_size=12),
        st.text(max_size=12),
        st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
    ),
    st.builds(ToolResultPart, st.text(max_size=12), st.text(), st.booleans()),
)
MESSAGES = st.builds(Message, st.sampled_from(Role), st.lists(PARTS, max_size=4).map(tuple))


def test_parts_encode_to_the_documented_shapes() -> None:
    message = Message(
        Role.ASSISTANT,
        (
            TextPart("hi"),
            ToolCallPart("c1", "clock", {"tz": "UTC"}),
            ToolResultPart("c1", "12:00", is_error=False),
        ),
    )
    assert message_to_dict(message) == {
        "role": "assistant",
        "parts": [
            {"type": "text", "text": "hi"},
            {"type": "tool_call", "id": "c1", "name": "clock", "input": {"tz": "UTC"}},
            {"type": "tool_result", "tool_call_id": "c1", "content": "12:00", "is_error": False},
        ],
    }


@settings(max_examples=25, deadline=None, database=None)
@given(MESSAGES)
def test_any_message_round_trips_through_the_codec_and_json(message: Message) -> None:
    encoded = message_to_dict(message)
    assert message_from_dict(encoded) == message
    assert message_from_dict(orjson.loads(orjson.dumps(encoded))) == message


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"role": "system", "parts": []},
        {"role": "user", "parts": "text"},
        {"role": "user", "parts": [{"type": "image"}]},
        {"role": "user", "parts": [{"type": "text", "text": 3}]},
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c", "name": "t", "input": []}],
        },
        {
            "role": "user",
            "parts": [
                {"type": "tool_result", "tool_call_id": "c", "content": "x", "is_error": "yes"}
            ],
        },
    ],
)
def test_a_malformed_message_is_an_input_error(data: Any) -> None:
    with pytest.raises(InputError):
        message_from_dict(data)
