"""The engine: one turn, start to end, over the ports it needs (a store, providers, tools).

`ChatService` is what every adapter (HTTP, terminal, batch) calls; the rest is behind it:
`run` (one turn's task), `leases` (the process's lease keeper), `context` (which history the
model sees) and `ports` (the store protocols). Nothing here imports `api`, `cli` or `store`.
"""

from chatd.engine.ports import KeyStore, Store
from chatd.engine.run import UsageSink
from chatd.engine.service import (
    ChatService,
    CompletionOptions,
    EngineConfig,
    ProviderSource,
    TurnOptions,
    check_max_tokens,
    check_model,
    check_session_id,
    clean_message,
)

__all__ = [
    "ChatService",
    "CompletionOptions",
    "EngineConfig",
    "KeyStore",
    "ProviderSource",
    "Store",
    "TurnOptions",
    "UsageSink",
    "check_max_tokens",
    "check_model",
    "check_session_id",
    "clean_message",
]
