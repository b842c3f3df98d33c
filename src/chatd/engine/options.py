"""What a caller asks of the engine: the options of a turn or a call, and the checks on input."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatd.engine.config import DisconnectPolicy
from chatd.engine.run import UsageSink
from chatd.errors import ConfigError, InputError, InputTooLarge
from chatd.providers.base import Provider
from chatd.types import DEFAULT_USER, GenerationParams, ToolSpec

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Unicode's control characters (category Cc) and lone surrogates (Cs), but newline and tab.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def check_session_id(session_id: str) -> str:
    """Return the id if it is 1–128 characters of [A-Za-z0-9._:-], else raise InputError."""
    if not SESSION_ID.fullmatch(session_id):
        raise InputError(
            "session id must be 1-128 characters of letters, digits and . _ : - "
            f"(got {session_id[:40]!r})"
        )
    return session_id


def clean_message(text: str, max_chars: int) -> str:
    """Strip control characters (but newline and tab) and enforce the length cap."""
    text = text.replace("\r\n", "\n")
    text = _CONTROLS.sub("", text)
    if not text.strip():
        raise InputError("message is empty")
    if len(text) > max_chars:
        raise InputTooLarge(
            f"message is {len(text)} characters; the limit is {max_chars} characters"
        )
    return text


def check_max_tokens(value: int | None, ceiling: int | None) -> None:
    """Refuse (InputError, 422) a max_tokens over the server's ceiling; never clamp silently."""
    if value is not None and ceiling is not None and value > ceiling:
        raise InputError(f"max_tokens {value} is over this server's ceiling of {ceiling}")


def check_model(allowed: Sequence[str], provider: str, model: str) -> None:
    """Refuse (ConfigError, 400) a model the allow-list leaves out; an empty list allows any."""
    if allowed and model not in allowed and f"{provider}/{model}" not in allowed:
        raise ConfigError(
            f"model {model!r} of provider {provider} is not allowed on this server; "
            f"allowed models: {', '.join(allowed)}"
        )


class ProviderSource(Protocol):
    """Where the engine gets providers by name; `ProviderPool` is the real one."""

    def get(self, name: str | None = None) -> Provider:
        """Return the named provider, or the default when name is None."""
        ...


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """Who is asking and how; session settings apply where these are None."""

    user_id: str = DEFAULT_USER
    params: GenerationParams = field(default_factory=GenerationParams)
    system_prompt: str | None = None
    provider: str | None = None
    tools: tuple[str, ...] | None = None
    idempotency_key: str | None = None
    on_disconnect: DisconnectPolicy | None = None
    usage_sink: UsageSink | None = None
    # The id of the HTTP request (or other cause) the turn serves, for its report.
    request_id: str | None = None
    # The session's system prompt from this turn on, set by the turn's own write: a refused
    # turn leaves the session as it was.
    session_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class CompletionOptions:
    """A stateless call: the caller brings the whole conversation and its own tools."""

    params: GenerationParams = field(default_factory=GenerationParams)
    system: str | None = None
    provider: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    usage_sink: UsageSink | None = None
    user_id: str = DEFAULT_USER
    request_id: str | None = None
    # A session the caller named for its own bookkeeping (no history is kept), for the report.
    session_id: str | None = None
