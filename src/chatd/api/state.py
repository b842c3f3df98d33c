"""The application's state, typed: what the lifespan opens and what the app counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from chatd.api.key_cache import KeyCache
    from chatd.quotas import Limiter
    from chatd.runtime import Runtime


@dataclass(slots=True)
class AppState:
    """One app's state: the response counts from the start, the rest once the lifespan opens it."""

    response_counts: Counter[tuple[str, int]] = field(default_factory=Counter)
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
