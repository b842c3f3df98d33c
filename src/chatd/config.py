"""Settings from CHATD_* variables and .env; nothing is built at import time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    """Return a SQLite file in the user's data directory ($XDG_DATA_HOME, or ~/.local/share)."""
    xdg = Path(os.environ.get("XDG_DATA_HOME") or "")
    # The XDG spec says to ignore a relative path: it would move with the working directory.
    base = xdg if xdg.is_absolute() else Path.home() / ".local" / "share"
    return f"sqlite:///{base / 'chatd' / 'chatd.db'}"


class Settings(BaseSettings):
    """Every knob chatd has; README.md's Configuration table lists them."""

    model_config = SettingsConfigDict(
        env_prefix="CHATD_", env_file=".env", extra="ignore", validate_default=True
    )

    database_url: str = Field(default_factory=default_database_url)
    redis_url: str | None = None
    provider: str = "auto"
    model: str | None = None
    base_url: str | None = None
    auth: Literal["auto", "on", "off"] = "auto"

    max_tokens: int = Field(default=1024, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    request_timeout_s: float = Field(default=120.0, gt=0)

    retry_max_attempts: int = Field(default=3, ge=1)
    retry_max_total_s: float = Field(default=60.0, ge=0)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    retry_max_delay_s: float = Field(default=8.0, ge=0)

    # How a session's history is fitted to the model when the session sets no policy: the
    # last keep_messages messages and a summary of the rest (`summary`), at most max_messages
    # (`window`) or max_tokens of history (`tokens`).
    context_policy: Literal["window", "tokens", "summary"] = "summary"
    context_max_messages: int = Field(default=50, ge=1, le=100_000)
    context_max_tokens: int = Field(default=16000, ge=1, le=100_000_000)
    context_keep_messages: int = Field(default=20, ge=1, le=100_000)
    # Every model's context window in tokens, for models chatd does not know (None: known
    # families, and what providers' context-length errors say).
    context_window: int | None = Field(default=None, ge=256, le=100_000_000)
    # Summaries are written by this model of the session's provider (None: the session's).
    # Ask the provider (where it can: Anthropic) to count a prompt whose estimate is past the
    # model's window before cutting it, rather than trusting the estimate and its margin.
    count_tokens: bool = False
    summary_model: str | None = None
    summary_max_tokens: int = Field(default=1024, ge=16, le=100_000)
    summary_prompt: str | None = None

    max_message_chars: int = Field(default=32000, ge=1)
    # Requests asking for more output than this are refused (422), not clamped; None: no cap.
    max_tokens_ceiling: int | None = Field(default=16384, ge=1)
    max_tool_rounds: int = Field(default=8, ge=0)
    tool_timeout_s: float = Field(default=30.0, gt=0)
    tools: list[str] = Field(default_factory=list)

    turn_lease_s: float = Field(default=30.0, gt=0)
    on_disconnect: Literal["finish", "abort"] = "finish"
    shutdown_grace_s: float = Field(default=30.0, ge=0)

    ollama_probe_timeout_s: float = Field(default=0.3, gt=0)

    # HTTP API.
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_completions_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    sse_ping_s: float = Field(default=15.0, gt=0)
    # Connections (per server process): a request's headers must arrive within this; a
    # kept-alive connection with no next request is closed after keep_alive_s; past
    # max_connections (fewer if the open-files limit is lower) the longest idle is closed.
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    keep_alive_s: int = Field(default=5, ge=1, le=300)
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    # Models a request may name ("provider/model" or a bare model); empty allows any.
    models: list[str] = Field(default_factory=list)

    # Auth, limits and prices. Default limits apply to keys that set none of their own, and to
    # the local user when auth is off; None means unlimited.
    limit_rpm: int | None = Field(default=None, ge=1)
    limit_tpm: int | None = Field(default=None, ge=1)
    limit_tokens_per_day: int | None = Field(default=None, ge=1)
    limit_budget_usd_per_day: float | None = Field(default=None, gt=0)
    # How long a looked-up key is trusted before it is read again (a revocation's delay).
    key_cache_s: float = Field(default=1.0, ge=0, le=1)
    # USD per million tokens by model, over the shipped table: {"model": {"input", "output"}}.
    prices: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prices_file: Path | None = None

    # Logs (stderr): JSON lines when it is not a terminal, one readable line each when it is.
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Put each turn's user message and reply text in its log line; off, no message text is
    # ever logged.
    log_content: bool = False
    # OpenTelemetry spans (the `otel` extra), exported as the standard OTEL_* variables say.
    otel: bool = False

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _max_tokens_under_ceiling(self) -> Settings:
        ceiling = self.max_tokens_ceiling
        if ceiling is not None and self.max_tokens > ceiling:
            raise ValueError(f"max_tokens {self.max_tokens} is over max_tokens_ceiling {ceiling}")
        return self
