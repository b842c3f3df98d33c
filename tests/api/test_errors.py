"""Each chatd error answers its status, in the error shape of the route's family."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from chatd.api import errors
from chatd.errors import (
    ChatdError,
    StoreUnavailable,
    UpstreamBadRequest,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

RAISED: dict[str, Exception] = {
    "store": StoreUnavailable("database unavailable: connection refused"),
    "limited": UpstreamRateLimited("rate limited", retry_after=2.2),
    "down": UpstreamUnavailable("unavailable"),
    "model": UpstreamBadRequest("no such model", upstream_status=404),
    "rejected": UpstreamBadRequest("too long", upstream_status=400),
    "bug": ChatdError("unforeseen"),
    "crash": RuntimeError("boom"),
}


def make_app() -> FastAPI:
    """Return an app whose routes raise each error under each family's prefix."""
    app = FastAPI()
    errors.install(app)
    for prefix in ("", "/v1", "/v1/chat/completions"):

        @app.get(prefix + "/raise/{name}")
        async def raise_it(name: str) -> None:
            raise RAISED[name]

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """Yield a client of the app (errors raised in the app become responses)."""
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.mark.parametrize(
    ("name", "status", "retry_after", "kind"),
    [
        ("store", 503, "2", "store_unavailable"),
        ("limited", 429, "3", "upstream_rate_limited"),
        ("down", 503, "2", "upstream_unavailable"),
        ("model", 400, None, "upstream_bad_request"),
        ("rejected", 502, None, "upstream_bad_request"),
        ("bug", 500, None, "internal_error"),
        ("crash", 500, None, "internal_error"),
    ],
)
@pytest.mark.allow_5xx
async def test_status_retry_after_and_shape_per_family(
    client: httpx.AsyncClient, name: str, status: int, retry_after: str | None, kind: str
) -> None:
    compat = await client.get(f"/raise/{name}")
    v1 = await client.get(f"/v1/raise/{name}")
    oai = await client.get(f"/v1/chat/completions/raise/{name}")
    for response in (compat, v1, oai):
        assert response.status_code == status
        assert response.headers.get("retry-after") == retry_after
    assert set(compat.json()) == {"detail"}
    assert v1.json()["error"]["type"] == kind
    assert set(v1.json()["error"]) == {"type", "message"}
    assert set(oai.json()["error"]) == {"message", "type", "param", "code"}
    if name == "crash":
        assert "boom" not in v1.text
