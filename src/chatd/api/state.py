"""The application's state, typed: what the lifespan opens and what the app counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.types import Scope

from chatd.api.metrics import Metrics

if TYPE_CHECKING:
    from chatd.api.key_cache import KeyCache
    from chatd.quotas import Limiter
    from chatd.runtime import Runtime


@dataclass(slots=True)
class AppState:
    """One app's state: its metrics from the start, the rest once the lifespan opens it."""

    metrics: Metrics = field(default_factory=Metrics.for_process)
    runtime: Runtime = field(init=False)
    key_cache: KeyCache = field(init=False)
    limiter: Limiter = field(init=False)


def attach(app: Starlette) -> AppState:
    """Give the app its state; once, as it is built."""
    made = AppState()
    app.state.chatd = made
    return made


def state(owner: Starlette | HTTPConnection) -> AppState:
    """Return the state of an app, or of the app serving a request (`state(scope["app"])`)."""
    app = owner.app if isinstance(owner, HTTPConnection) else owner
    found: AppState = app.state.chatd
    return found


def state_of(scope: Scope) -> AppState | None:
    """Return the state of the chatd app serving a scope; None where none does (tests)."""
    app_state = getattr(scope.get("app"), "state", None)
    found: AppState | None = getattr(app_state, "chatd", None)
    return found
