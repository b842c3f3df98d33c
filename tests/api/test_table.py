"""The route table names routes the app has, and says what the middleware reads from it."""

from __future__ import annotations

from chatd.api.app import create_app
from chatd.api.table import ROUTES, family, is_metered, is_public
from chatd.config import Settings


def test_every_row_is_a_route_of_the_app() -> None:
    paths = create_app(Settings(database_url="sqlite:///:memory:")).openapi()["paths"]
    for row in ROUTES:
        for method in row.methods - {"HEAD"}:
            assert method.lower() in paths.get(row.path, {}), (row.path, method)


def test_what_the_middleware_reads() -> None:
    assert is_public("GET", "/healthz")
    assert is_public("HEAD", "/readyz")
    assert not is_public("POST", "/healthz")
    assert not is_public("GET", "/sessions")
    assert is_public("GET", "/ui")
    assert is_public("GET", "/ui/assets/app.js")
    assert is_public("HEAD", "/ui/")
    assert not is_public("POST", "/ui/")
    assert not is_public("GET", "/uix")
    assert is_metered("POST", "/chat/abc")
    assert is_metered("POST", "/v1/sessions/a/messages")
    assert not is_metered("GET", "/v1/sessions/a/messages")
    assert is_metered("POST", "/v1/sessions/a/continue")
    assert is_metered("POST", "/v1/sessions/a/regenerate")
    assert not is_metered("POST", "/chat/")
    assert family("/v1/chat/completions") == family("/v1/models/x") == "openai"
    assert family("/v1/sessions") == "v1"
    assert family("/chat") == family("/v1") == "compat"
