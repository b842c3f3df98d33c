"""The log formats: auto picks JSON off a terminal, text on one; a turn's line from its report;
key-shaped strings blanked from any message."""

from __future__ import annotations

import io
import logging
import sys
from dataclasses import replace
from typing import Any

import orjson
import pytest

from chatd.logs import (
    FIELDS,
    JsonFormatter,
    TextFormatter,
    log_report,
    logging_config,
    report_fields,
    resolve_format,
)
from chatd.types import CallReport, Usage


class _Stream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.mark.parametrize(
    ("setting", "terminal", "chosen"),
    [
        ("auto", False, "json"),
        ("auto", True, "text"),
        ("json", True, "json"),
        ("text", False, "text"),
    ],
)
def test_auto_is_json_unless_on_a_terminal(setting: str, terminal: bool, chosen: str) -> None:
    assert resolve_format(setting, _Stream(terminal)) == chosen


def record(msg: str, *args: Any, fields: dict[str, Any] | None = None) -> logging.LogRecord:
    made = logging.LogRecord("chatd.test", logging.INFO, __file__, 1, msg, args, None)
    if fields is not None:
        setattr(made, FIELDS, fields)
    return made


def test_a_json_line_is_one_object_with_its_fields() -> None:
    line = JsonFormatter().format(record("hello %s", "there", fields={"n": 1, "tags": ("a",)}))
    assert "\n" not in line
    parsed = orjson.loads(line)
    assert parsed["msg"] == "hello there"
    assert (parsed["level"], parsed["logger"], parsed["n"], parsed["tags"]) == (
        "info",
        "chatd.test",
        1,
        ["a"],
    )
    assert parsed["ts"].endswith("+00:00")


def test_a_traceback_stays_inside_its_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.LogRecord(
            "chatd.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    parsed = orjson.loads(JsonFormatter().format(made))
    assert "ValueError: boom" in parsed["exc"]


def test_a_text_line_reads_as_key_value_pairs() -> None:
    fields = {"route": "/v1/x/{id}", "status": 200, "error": None, "errors": [], "why": "a b"}
    line = TextFormatter().format(record("request", fields=fields))
    assert line.endswith(' INFO    request route=/v1/x/{id} status=200 why="a b"')


def test_text_with_newlines_stays_on_one_line() -> None:
    line = TextFormatter().format(record("turn", fields={"prompt": "two\nlines"}))
    assert "\n" not in line
    assert 'prompt="two\\nlines"' in line


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_key_shaped_strings_are_blanked(formatter: logging.Formatter) -> None:
    key = "chatd_" + "A" * 43
    line = formatter.format(record("GET /x?key=%s failed", key))
    assert key not in line
    assert "chatd_[redacted]" in line


REPORT = CallReport(
    kind="turn",
    user_id="ann",
    provider="anthropic",
    model="m",
    state="failed",
    usage=Usage(10, 5, 3, 2),
    cost_usd=0.000123456789,
    latency_ms=12.3456,
    ttft_ms=None,
    retries=2,
    upstream_errors=("UpstreamUnavailable",),
    session_id="s",
    turn_id="t",
    context_moves=1,
    summarized=True,
    tool_rounds=3,
    request_id="r",
    error="UpstreamError",
)


def test_a_reports_fields() -> None:
    fields = report_fields(REPORT)
    assert fields == {
        "request_id": "r",
        "user": "ann",
        "session": "s",
        "turn": "t",
        "kind": "turn",
        "provider": "anthropic",
        "model": "m",
        "state": "failed",
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_tokens": 3,
        "cache_write_tokens": 2,
        "estimated": False,
        "cost_usd": 0.00012346,
        "latency_ms": 12.3,
        "ttft_ms": None,
        "retries": 2,
        "upstream_errors": ["UpstreamUnavailable"],
        "context_moves": 1,
        "summarized": True,
        "tool_rounds": 3,
        "error": "UpstreamError",
    }


def test_a_failed_turn_is_a_warning_and_text_only_when_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="chatd.turn"):
        log_report(REPORT)
        log_report(replace(REPORT, state="complete", prompt="hi", reply="hello"))
    failed, done = caplog.records
    assert (failed.levelno, done.levelno) == (logging.WARNING, logging.INFO)
    assert "prompt" not in getattr(failed, FIELDS)
    assert (getattr(done, FIELDS)["prompt"], getattr(done, FIELDS)["reply"]) == ("hi", "hello")


def test_the_server_config_sends_everything_through_one_formatter() -> None:
    config = logging_config("json", "warning")
    assert config["formatters"]["chatd"]["()"] == "chatd.logs.JsonFormatter"
    assert config["loggers"]["chatd"]["level"] == "WARNING"
    assert config["loggers"]["uvicorn.access"]["handlers"] == []
    assert logging_config("text", "info")["formatters"]["chatd"]["()"] == (
        "chatd.logs.TextFormatter"
    )
