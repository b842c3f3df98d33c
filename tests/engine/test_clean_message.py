"""Message cleaning: control characters go, everything else a person typed stays."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.engine import clean_message
from chatd.errors import InputError, InputTooLarge


def by_category(text: str) -> str:
    """The definition: drop Unicode's Cc and Cs characters, keep newline and tab."""
    text = text.replace("\r\n", "\n")
    kept = (c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"))
    return "".join(kept)


@given(st.text(alphabet=st.characters(codec=None), min_size=1))
def test_cleaning_drops_exactly_the_control_characters(text: str) -> None:
    expected = by_category(text)
    if not expected.strip():
        with pytest.raises(InputError):
            clean_message(text, 10_000)
    else:
        assert clean_message(text, 10_000) == expected


def test_every_control_and_surrogate_code_point_is_dropped() -> None:
    controls = "".join(
        chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cs")
    )
    assert clean_message(f"a{controls}b", 10_000) == "a\t\nb"


def test_the_length_cap_counts_what_is_left() -> None:
    assert clean_message("\x00" * 50 + "hi", 2) == "hi"
    with pytest.raises(InputTooLarge):
        clean_message("hey", 2)
