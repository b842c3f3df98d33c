"""EngineConfig: the engine's defaults and bounds, read from settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from chatd.config import Settings
from chatd.engine.context import ContextPolicy, Summarize, policy_for
from chatd.engine.summarize import SummaryConfig
from chatd.prices import PriceTable, load_prices
from chatd.providers.retry import RetryPolicy
from chatd.types import GenerationParams

DisconnectPolicy = Literal["finish", "abort"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's defaults and bounds."""

    defaults: GenerationParams = field(
        default_factory=lambda: GenerationParams(max_tokens=1024, stop=())
    )
    policy: ContextPolicy = field(default_factory=lambda: Summarize(20))
    summaries: SummaryConfig = field(default_factory=SummaryConfig)
    # CHATD_CONTEXT_WINDOW: every model's context window, where the operator knows it.
    context_window: int | None = None
    # CHATD_COUNT_TOKENS: ask the provider to count a prompt an estimate puts past the window.
    count_tokens: bool = False
    # What calls cost, for the reports observers get (None: costs unknown).
    prices: PriceTable | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_tool_rounds: int = 8
    tool_timeout_s: float = 30.0
    max_message_chars: int = 32000
    max_tokens_ceiling: int | None = None
    # CHATD_MODELS: every call's model, however it was chosen, must be one of these.
    models: tuple[str, ...] = ()
    lease_s: float = 30.0
    on_disconnect: DisconnectPolicy = "finish"
    # CHATD_LOG_CONTENT: reports carry the user's message and the reply's text, for the logs.
    log_content: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> EngineConfig:
        """Read the engine's knobs from settings."""
        limits = {
            "window": s.context_max_messages,
            "tokens": s.context_max_tokens,
            "summary": s.context_keep_messages,
        }
        policy = policy_for(s.context_policy, limits[s.context_policy], Summarize(20))
        return cls(
            defaults=GenerationParams(
                model=s.model,
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                stop=(),
                tools=tuple(s.tools),
            ),
            policy=policy,
            summaries=SummaryConfig(
                model=s.summary_model,
                max_tokens=s.summary_max_tokens,
                prompt=s.summary_prompt or SummaryConfig().prompt,
            ),
            context_window=s.context_window,
            count_tokens=s.count_tokens,
            prices=load_prices(s.prices, s.prices_file),
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
            log_content=s.log_content,
        )
