"""What the terminal chat writes: text from the model or the store, never a control sequence."""

from __future__ import annotations

from chatd.cli.repl import shown


def test_an_escape_sequence_split_across_two_deltas_stays_inert() -> None:
    halves = ["copied! \x1b", "]52;c;cHduZWQ=\x07 done"]
    written = "".join(shown(half) for half in halves)
    assert written == "copied! \\x1b]52;c;cHduZWQ=\\x07 done"


def test_every_control_is_made_visible_and_printable_text_is_kept() -> None:
    text = "naïve 日本語 café — ok\tcol\nline 2 \x00\x08\x7f\x85\x9b\u202e\u2066\ud800"
    assert shown(text) == (
        "naïve 日本語 café — ok\tcol\nline 2 \\x00\\x08\\x7f\\x85\\x9b\\u202e\\u2066\\ud800"
    )


def test_a_carriage_return_is_dropped_so_no_line_is_overwritten() -> None:
    assert shown("safe\rEVIL\r\nnext") == "safeEVIL\nnext"
