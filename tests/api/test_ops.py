"""Health, readiness, metrics, CORS, security headers, the OpenAPI document."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx
import pytest

ORIGIN = "http://allowed.test"


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_checks_database_migrations_and_provider(client: httpx.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "provider": "ok: anthropic"},
    }


@pytest.mark.allow_5xx
def test_readyz_is_503_when_migrations_are_not_applied(make_server: Any) -> None:
    server = make_server()
    path = server.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0001'")
    response = httpx.get(server.url + "/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert "chatd db upgrade" in body["checks"]["migrations"]


def test_metrics_count_responses(client: httpx.Client) -> None:
    client.get("/healthz")
    client.get("/v1/sessions/nope-nope")
    text = client.get("/metrics").text
    assert "# TYPE chatd_http_requests_total counter" in text
    assert 'chatd_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    route = "/v1/sessions/{session_id}"
    assert f'chatd_http_requests_total{{method="GET",route="{route}",status="404"}}' in text


def test_security_headers_on_every_response(client: httpx.Client) -> None:
    for response in (client.get("/healthz"), client.get("/history/none-here"), client.get("/x")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in response.headers["content-security-policy"]
    # The interactive docs load their own scripts, so no CSP there.
    assert "content-security-policy" not in client.get("/docs").headers


def test_cors_allows_the_configured_origin_only(client: httpx.Client) -> None:
    preflight = {
        "origin": ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,idempotency-key",
    }
    allowed = client.options("/v1/sessions", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    other = client.options("/v1/sessions", headers={**preflight, "origin": "http://evil.test"})
    assert "access-control-allow-origin" not in other.headers
    simple = client.get("/healthz", headers={"origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN


def test_unknown_routes_use_the_familys_error_shape(client: httpx.Client) -> None:
    assert client.get("/v1/nothing-here").json()["error"]["type"] == "not_found"
    assert client.get("/nothing-here").json() == {"detail": "Not Found"}
    wrong_method = client.put("/v1/sessions")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "method_not_allowed"


def test_openapi_documents_every_route_and_the_session_header(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/",
        "/chat",
        "/chat-stream",
        "/chat/{session_id}",
        "/history/{session_id}",
        "/sessions",
        "/reset/{session_id}",
        "/stats",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/messages",
        "/v1/sessions/{session_id}/reset",
        "/v1/sessions/{session_id}/export",
        "/v1/sessions/import",
        "/v1/usage",
        "/v1/models",
        "/v1/chat/completions",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    params = paths["/v1/chat/completions"]["post"]["parameters"]
    assert {p["name"] for p in params} >= {"X-Chatd-Session", "Idempotency-Key"}
    send = paths["/v1/sessions/{session_id}/messages"]["post"]["responses"]["200"]["content"]
    assert set(send) == {"application/json", "text/event-stream"}
