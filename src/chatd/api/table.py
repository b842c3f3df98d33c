"""The route table: each route's facts declared once; every middleware reads them from here.

A route's row says whether it needs no key (public), whether it calls the model (metered: it
reserves and spends token and cost quotas), whether its body may be as large as a completion's,
and whether the fast path serves it (hot). The error shape a path speaks goes by its prefix,
so a 404 or 405 under /v1/ reads like any other /v1 error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Family = Literal["compat", "v1", "openai"]

GET_HEAD = frozenset({"GET", "HEAD"})
POST = frozenset({"POST"})


@dataclass(frozen=True, slots=True)
class Route:
    """One route's facts; `path` as its router declares it, `{name}` standing for one segment."""

    path: str
    methods: frozenset[str]
    public: bool = False
    metered: bool = False
    large_body: bool = False
    hot: bool = False


@dataclass(frozen=True, slots=True)
class Area:
    """The error shape of every path starting with `prefix`."""

    prefix: str
    errors: Family


ROUTES = (
    # Health checks are nobody's requests: no key, no limits.
    Route("/", GET_HEAD, public=True),
    Route("/healthz", GET_HEAD, public=True),
    Route("/readyz", GET_HEAD, public=True),
    Route("/chat", POST, metered=True, hot=True),
    Route("/chat-stream", POST, metered=True, hot=True),
    Route("/chat/{session_id}", POST, metered=True, hot=True),
    Route("/v1/sessions/{session_id}/messages", POST, metered=True, hot=True),
    Route("/v1/sessions/{session_id}/continue", POST, metered=True),
    Route("/v1/sessions/{session_id}/regenerate", POST, metered=True),
    Route("/v1/chat/completions", POST, metered=True, large_body=True, hot=True),
    Route("/v1/sessions/import", POST, large_body=True),
)

# The chat page (/ui, sent on to /ui/) and its files: it asks for the key itself, so it loads
# without one. Not in ROUTES: it is static files, outside the API's schema.
PUBLIC_PAGE = "/ui"

# The first area whose prefix a path starts with gives its error shape; the compatibility
# routes (and any other path) keep FastAPI's `{"detail": ...}`.
AREAS = (
    Area("/v1/chat/completions", "openai"),
    Area("/v1/models", "openai"),
    Area("/v1/", "v1"),
)
DEFAULT_FAMILY: Family = "compat"

_SEGMENT = re.compile(r"\{[a-z_]+\}")


def path_pattern(path: str, segment: str = "[^/]+") -> str:
    """Return a route's path as a regular expression, each `{name}` a group of `segment`."""
    parts = _SEGMENT.split(path)
    return f"({segment})".join(re.escape(p) for p in parts)


def _patterns(routes: tuple[Route, ...]) -> dict[str, re.Pattern[str]]:
    by_method: dict[str, list[str]] = {}
    for route in routes:
        for method in sorted(route.methods):
            by_method.setdefault(method, []).append(path_pattern(route.path))
    return {m: re.compile("|".join(ps)) for m, ps in by_method.items()}


_PUBLIC = {r.path: r.methods for r in ROUTES if r.public}
_METERED = _patterns(tuple(r for r in ROUTES if r.metered))
LARGE_BODY_PATHS = frozenset(r.path for r in ROUTES if r.large_body)
HOT_ROUTES = tuple(r for r in ROUTES if r.hot)
assert not any("{" in p for p in LARGE_BODY_PATHS), "body caps are looked up by exact path"
assert not any("{" in p for p in _PUBLIC), "public paths are looked up by exact path"


def is_public(method: str, path: str) -> bool:
    """Tell whether a request needs no key."""
    methods = _PUBLIC.get(path)
    if methods is None:
        page = path == PUBLIC_PAGE or path.startswith(PUBLIC_PAGE + "/")
        return page and method in GET_HEAD
    return method in methods


def is_metered(method: str, path: str) -> bool:
    """Tell whether a request calls the model."""
    pattern = _METERED.get(method)
    return pattern is not None and pattern.fullmatch(path) is not None


def family(path: str) -> Family:
    """Tell which error shape a path speaks: openai, v1 or compat."""
    for area in AREAS:
        if path.startswith(area.prefix):
            return area.errors
    return DEFAULT_FAMILY
