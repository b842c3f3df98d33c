"""The engine: one turn, start to end, over the ports it needs (a store, providers, tools).

`ChatService` is what every adapter (HTTP, terminal, batch) calls; the rest is behind it:
`config` (its defaults and bounds), `run` (one turn's task), `leases` (the process's lease
keeper), `context` (which history the model sees) and `ports` (the store protocols, narrow by
caller). Nothing here imports `api`, `cli` or `store`.
"""

from chatd.engine.config import DisconnectPolicy, EngineConfig
from chatd.engine.options import (
    CompletionOptions,
    ProviderSource,
    TurnOptions,
    check_max_tokens,
    check_model,
    check_session_id,
    clean_message,
)
from chatd.engine.ports import (
    KeyStore,
    LeaseStore,
    PendingRegeneration,
    PendingTurn,
    SessionReader,
    SessionStore,
    SessionWriter,
    Store,
    TurnStore,
)
from chatd.engine.run import UsageSink
from chatd.engine.service import ChatService

__all__ = [
    "ChatService",
    "CompletionOptions",
    "DisconnectPolicy",
    "EngineConfig",
    "KeyStore",
    "LeaseStore",
    "PendingRegeneration",
    "PendingTurn",
    "ProviderSource",
    "SessionReader",
    "SessionStore",
    "SessionWriter",
    "Store",
    "TurnOptions",
    "TurnStore",
    "UsageSink",
    "check_max_tokens",
    "check_model",
    "check_session_id",
    "clean_message",
]
