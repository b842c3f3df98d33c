"""EngineConfig: the engine's defaults and bounds, read from settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from chatd.config import Settings
from chatd.engine.context import ContextPolicy, SlidingWindow, TokenBudget
from chatd.providers.retry import RetryPolicy
from chatd.types import GenerationParams

DisconnectPolicy = Literal["finish", "abort"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's defaults and bounds."""

    defaults: GenerationParams = field(
        default_factory=lambda: GenerationParams(max_tokens=1024, stop=())
    )
    policy: ContextPolicy = field(default_factory=lambda: TokenBudget(16000))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_tool_rounds: int = 8
    tool_timeout_s: float = 30.0
    max_message_chars: int = 32000
    max_tokens_ceiling: int | None = None
    # CHATD_MODELS: every call's model, however it was chosen, must be one of these.
    models: tuple[str, ...] = ()
    lease_s: float = 30.0
    on_disconnect: DisconnectPolicy = "finish"

    @classmethod
    def from_settings(cls, s: Settings) -> EngineConfig:
        """Read the engine's knobs from settings."""
        policy: ContextPolicy = (
            SlidingWindow(s.context_max_messages)
            if s.context_policy == "window"
            else TokenBudget(s.context_max_tokens)
        )
        return cls(
            defaults=GenerationParams(
                model=s.model,
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                stop=(),
                tools=tuple(s.tools),
            ),
            policy=policy,
            retry=RetryPolicy(
                s.retry_max_attempts, s.retry_base_delay_s, s.retry_max_delay_s, s.retry_max_total_s
            ),
            max_tool_rounds=s.max_tool_rounds,
            tool_timeout_s=s.tool_timeout_s,
            max_message_chars=s.max_message_chars,
            max_tokens_ceiling=s.max_tokens_ceiling,
            models=tuple(s.models),
            lease_s=s.turn_lease_s,
            on_disconnect=s.on_disconnect,
        )
