"""The API docs work offline: /docs loads only from chatd, in a real Chromium too."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from playwright.sync_api import Browser, Route

CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


class _Links(HTMLParser):
    """Collect the URLs a page loads: scripts, stylesheets, icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Keep a script's src and a link's href."""
        wanted = {"script": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


def loaded_urls(html: str) -> list[str]:
    """Return the URLs the docs page loads, the schema's included."""
    parser = _Links()
    parser.feed(html)
    # The schema's URL is in Swagger UI's inline script.
    return parser.urls + re.findall(r"url: '([^']+)'", html)


def test_docs_page_loads_everything_from_the_server(client: httpx.Client) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "//cdn" not in html
    for url in re.findall(r"(?:https?:)?//[^\s\"'<>]+", html):
        assert url.startswith(str(client.base_url)), f"/docs refers to {url}"
    urls = loaded_urls(html)
    assert len(urls) == 4, urls  # script, stylesheet, icon, schema
    for url in urls:
        asset = client.get(urljoin(f"{client.base_url}/docs", url))
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(CONTENT_TYPES[Path(url).suffix]), url


def test_docs_answer_head_and_only_their_own_assets(client: httpx.Client) -> None:
    assert client.head("/docs").status_code == 200
    assert client.head("/docs/static/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/static/nothing.js").status_code == 404
    assert client.get("/docs/static/%2E%2E/__init__.py").status_code == 404
    # ReDoc is off: its bundle fetches its logo from cdn.redoc.ly.
    assert client.get("/redoc").status_code == 404


def test_docs_assets_need_a_key_as_the_docs_do(make_server: Any, make_key: Any) -> None:
    server = make_server(auth="on")
    key = make_key(server, "ann")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path in ("/docs", "/openapi.json", "/docs/static/swagger-ui.css"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers={"x-api-key": key}).status_code == 200, path


def test_docs_render_in_chromium_without_internet(
    browser: Browser, server: Any, tmp_path: Path
) -> None:
    local = server.url + "/"
    asked: list[str] = []
    errors: list[str] = []

    def only_local(route: Route) -> None:
        if route.request.url.startswith(local):
            route.continue_()
        else:
            route.abort("internetdisconnected")

    page = browser.new_page()
    try:
        page.set_default_timeout(15_000)
        page.on("request", lambda request: asked.append(request.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.route("**/*", only_local)
        page.goto(server.url + "/docs")
        sessions = page.locator('.opblock-summary-path[data-path="/v1/sessions"]').first
        sessions.wait_for(state="visible")
        sessions.scroll_into_view_if_needed()
        assert page.locator(".opblock").count() > 20
        page.screenshot(path=tmp_path / "docs.png")
    finally:
        page.close()
    assert not errors, errors
    assert server.url + "/openapi.json" in asked
    elsewhere = [url for url in asked if not url.startswith(local)]
    assert not elsewhere, elsewhere
