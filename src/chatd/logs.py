"""chatd's log lines: JSON or one readable line each, one per request and one per turn.

`chatd serve` sends every log record (its own, uvicorn's, the libraries') to stderr through one
formatter: `JsonFormatter` (one JSON object per line, for collectors) when stderr is not a
terminal, `TextFormatter` when it is (`CHATD_LOG_FORMAT` overrides). A request's line comes
from `chatd.api.requests`; a turn's or a stateless call's from its `CallReport`, told to
`log_report` after the call has ended, so the turn itself does no logging work.

Fields ride on a record as `record.chatd_fields` (a dict); other records carry only their
message. No line carries a key or a header; message text appears only in a turn's line, and
only when the operator sets `CHATD_LOG_CONTENT=true`.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson

from chatd.types import CallReport

LogFormat = Literal["json", "text"]

# A request's line, and a turn's (or stateless call's).
REQUESTS = "chatd.request"
TURNS = "chatd.turn"
# Where a record's fields are kept: `log.info(msg, extra={FIELDS: {...}})`.
FIELDS = "chatd_fields"

_turns = logging.getLogger(TURNS)

# Anything shaped like a chatd key, wherever a message carries it (a URL in a library's error).
_KEYLIKE = re.compile(r"chatd_[A-Za-z0-9_-]{8,}")
_REDACTED = "chatd_[redacted]"


def resolve_format(setting: str, stream: TextIO) -> LogFormat:
    """Return the format `CHATD_LOG_FORMAT` means on this stream: auto is text on a terminal."""
    if setting in ("json", "text"):
        return "json" if setting == "json" else "text"
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return "text" if terminal else "json"


def logging_config(fmt: LogFormat, level: str) -> dict[str, Any]:
    """Return the `logging.config.dictConfig` of a server process (uvicorn applies it per worker).

    uvicorn's access log is off: `chatd.api.requests` writes each request's line instead.
    """
    formatter = "chatd.logs.JsonFormatter" if fmt == "json" else "chatd.logs.TextFormatter"
    chatd_level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"chatd": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "chatd",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "chatd": {"handlers": ["stderr"], "level": chatd_level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        # The libraries' warnings, in the same format.
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def _message(record: logging.LogRecord) -> str:
    return _KEYLIKE.sub(_REDACTED, record.getMessage())


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: ts, level, logger, msg, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        fields = getattr(record, FIELDS, None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = _KEYLIKE.sub(_REDACTED, self.formatException(record.exc_info))
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


# A value printed bare in the text form; anything else is quoted as a JSON string.
_BARE = re.compile(r"[A-Za-z0-9_.:/{}@+-]+")


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    text = str(value)
    return text if _BARE.fullmatch(text) else orjson.dumps(text).decode()


class TextFormatter(logging.Formatter):
    """Format a record as one readable line: time, level, message, then key=value fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line (a traceback follows on lines of its own)."""
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        head = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {_message(record)}"
        fields = getattr(record, FIELDS, None)
        if fields:
            pairs = (
                f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None and v != []
            )
            head = " ".join((head, *pairs))
        if record.exc_info:
            head += "\n" + _KEYLIKE.sub(_REDACTED, self.formatException(record.exc_info))
        return head


def report_fields(report: CallReport) -> dict[str, Any]:
    """Return a turn's (or stateless call's) log fields; its text only if the engine kept it."""
    usage = report.usage
    fields: dict[str, Any] = {
        "request_id": report.request_id,
        "user": report.user_id,
        "session": report.session_id,
        "turn": report.turn_id,
        "kind": report.kind,
        "provider": report.provider,
        "model": report.model,
        "state": report.state,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "estimated": usage.estimated,
        "cost_usd": None if report.cost_usd is None else round(report.cost_usd, 8),
        "latency_ms": round(report.latency_ms, 1),
        "ttft_ms": None if report.ttft_ms is None else round(report.ttft_ms, 1),
        "retries": report.retries,
        "upstream_errors": list(report.upstream_errors),
        "context_moves": report.context_moves,
        "summarized": report.summarized,
        "tool_rounds": report.tool_rounds,
        "error": report.error,
    }
    # Filled by the engine only with CHATD_LOG_CONTENT (EngineConfig.log_content).
    if report.prompt is not None:
        fields["prompt"] = report.prompt
    if report.reply is not None:
        fields["reply"] = report.reply
    return fields


def emit(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """Log one line of fields (the caller checked the level).

    Past `Logger.log`, which walks the stack for the caller's file and line: no format here
    shows them, and the walk is a third of a line's cost.
    """
    logger.handle(
        logger.makeRecord(logger.name, level, "", 0, msg, (), None, extra={FIELDS: fields})
    )


def log_report(report: CallReport) -> None:
    """Log one line for a finished turn or stateless call (a ChatService observer)."""
    level = logging.WARNING if report.state == "failed" else logging.INFO
    if _turns.isEnabledFor(level):
        emit(_turns, level, report.kind, report_fields(report))
