"""The ``[fake: key=value ...]`` directive language of the fake LLM upstream.

The directives are documented in `chatd.testing.fake_upstream`. A malformed one raises
`WireError`, which the server answers with a 400 in the provider's error shape.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

StopReason = Literal["end_turn", "max_tokens", "refusal", "stop_sequence", "tool_use"]

DIRECTIVE_RE = re.compile(r"\s*\[fake:([^\]]*)\]")
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_FORCIBLE_STOPS = ("end_turn", "max_tokens", "refusal", "stop_sequence")


class WireError(Exception):
    """A request the fake rejects with a 400 in the provider's error shape."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Directives:
    """Fault and shaping directives parsed from `[fake: ...]` in the last user text."""

    chunks: int = 4
    delay_ms: int = 0
    status: int | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    quota: bool = False
    fail_times: int | None = None
    stream_error_after: int | None = None
    drop_after: int | None = None
    stop: StopReason | None = None
    tool: str | None = None
    tool_input: dict[str, Any] = field(default_factory=dict)
    tool_rounds: int = 1
    usage_in: int | None = None
    usage_out: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    no_usage: bool = False
    words: int = 0
    unknown_event: bool = False
    reject_stream_options: bool = False
    cache_min: int | None = None
    context_limit: int | None = None

    @property
    def has_fault(self) -> bool:
        """Say whether any failure directive is present."""
        return (
            self.status is not None
            or self.stream_error_after is not None
            or self.drop_after is not None
        )

    def without_faults(self) -> Directives:
        """Return a copy with every failure directive switched off."""
        return replace(self, status=None, stream_error_after=None, drop_after=None)


# Minimum accepted value of each integer directive.
_INT_KEYS = {
    "chunks": 1,
    "delay_ms": 0,
    "fail_times": 0,
    "stream_error_after": 0,
    "drop_after": 0,
    "tool_rounds": 0,
    "usage_in": 0,
    "usage_out": 0,
    "cache_read": 0,
    "cache_write": 0,
    "words": 0,
    "cache_min": 1,
    "context_limit": 1,
}
_BOOL_KEYS = frozenset(("quota", "no_usage", "unknown_event", "reject_stream_options"))


def parse_directives(text: str) -> Directives:
    """Parse every `[fake: key=value ...]` in text; raise WireError on a malformed value."""
    values: dict[str, Any] = {}
    for match in DIRECTIVE_RE.finditer(text):
        for token in match.group(1).split():
            key, sep, raw = token.partition("=")
            if not sep or not raw:
                raise WireError(f"fake directive {token!r} is not key=value")
            if key in _INT_KEYS:
                values[key] = _parse_int(key, raw, _INT_KEYS[key])
            elif key in _BOOL_KEYS:
                if raw not in ("0", "1", "true", "false"):
                    raise WireError(f"fake directive {key}={raw!r} must be 0 or 1")
                values[key] = raw in ("1", "true")
            elif key == "status":
                status = _parse_int(key, raw, 400)
                if status > 599:
                    raise WireError(f"fake directive status={raw!r} must be 400-599")
                values[key] = status
            elif key in ("retry_after", "retry_after_ms"):
                values[key] = _parse_header_value(key, raw)
            elif key == "stop":
                if raw not in _FORCIBLE_STOPS:
                    raise WireError(f"fake directive stop={raw!r} must be one of {_FORCIBLE_STOPS}")
                values[key] = raw
            elif key == "tool":
                if not _TOOL_NAME_RE.match(raw):
                    raise WireError(f"fake directive tool={raw!r} is not a tool name")
                values[key] = raw
            elif key == "tool_input":
                values[key] = _parse_tool_input(raw)
            # Unknown keys are ignored so a test can carry notes for other fakes.
    return Directives(**values)


def _parse_int(key: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise WireError(f"fake directive {key}={raw!r} must be an integer") from None
    if value < minimum:
        raise WireError(f"fake directive {key}={raw!r} must be >= {minimum}")
    return value


def _parse_header_value(key: str, raw: str) -> str:
    # Any text at all, so clients can be tested against nonsense; but never a header break.
    value = urllib.parse.unquote(raw)
    if not all(" " <= c <= "~" for c in value):
        raise WireError(f"fake directive {key}={raw!r} must be printable ASCII once url-decoded")
    return value


def _parse_tool_input(raw: str) -> dict[str, Any]:
    try:
        value = orjson.loads(urllib.parse.unquote(raw))
    except orjson.JSONDecodeError:
        raise WireError(f"fake directive tool_input={raw!r} is not url-encoded JSON") from None
    if not isinstance(value, dict):
        raise WireError(f"fake directive tool_input={raw!r} must be a JSON object")
    return value


def strip_directives(text: str) -> str:
    """Remove every directive from text and trim the result."""
    return DIRECTIVE_RE.sub("", text).strip()
