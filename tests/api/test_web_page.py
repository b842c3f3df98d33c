"""The chat page is served from the package: public, current, self-contained, under a strict CSP."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatd.api.web import PAGE_DIR

ROOT = Path(__file__).parents[2]
WEB = ROOT / "web"


def test_a_browser_asking_for_the_root_is_sent_to_the_page(client: httpx.Client) -> None:
    browser = client.get("/", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 307
    assert browser.headers["location"] == "/ui/"
    # API clients (curl, SDKs, health checks) keep the JSON status.
    for accept in ("*/*", "application/json", None):
        headers = {} if accept is None else {"accept": accept}
        answer = client.get("/", headers=headers)
        assert answer.status_code == 200
        assert answer.json() == {"status": "ok", "service": "chatd"}


def test_the_page_keeps_the_session_it_was_asked_for(client: httpx.Client) -> None:
    answer = client.get("/ui?session=abc-1")
    assert answer.status_code == 307
    assert answer.headers["location"] == "/ui/?session=abc-1"
    page = client.get("/ui/?session=abc-1")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


def test_the_page_has_a_strict_content_security_policy(client: httpx.Client) -> None:
    for path in ("/ui/", "/ui/assets/app.js", "/ui/assets/app.css"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        policy = dict(
            part.strip().split(" ", 1)
            for part in answer.headers["content-security-policy"].split(";")
        )
        assert policy["default-src"] == "'none'"
        assert policy["script-src"] == "'self'"
        assert policy["style-src"] == "'self'"
        assert policy["connect-src"] == "'self'"
        assert policy["img-src"] == "'self' data:"
        assert policy["frame-ancestors"] == "'none'"
        assert policy["require-trusted-types-for"] == "'script'"
        assert "unsafe" not in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-cache"
    # The API's own answers keep the stricter policy of data.
    assert (
        client.get("/healthz").headers["content-security-policy"].startswith("default-src 'none'")
    )


def test_the_page_has_no_inline_script_and_loads_nothing_from_elsewhere(
    client: httpx.Client,
) -> None:
    html = client.get("/ui/").text
    build = json.loads((PAGE_DIR / "BUILD.json").read_text())["sources_sha256"][:12]
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, re.S)
    assert scripts == [""], "one script, from a file"
    assert f'<script type="module" src="assets/app.js?v={build}">' in html
    assert "<style" not in html
    assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
    assert not re.search(r"(?:https?:)?//", html), "every URL in the page is relative"
    css = client.get("/ui/assets/app.css").text
    assert "@import" not in css
    assert not re.search(r"url\((?!data:)", css), "the stylesheet loads nothing"


def test_the_page_needs_no_key_but_the_api_behind_it_does(make_server: Any) -> None:
    server = make_server(auth="on")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/ui/").status_code == 200
        assert http.get("/ui/assets/app.js").status_code == 200
        assert http.head("/ui/").status_code == 200
        assert http.get("/ui").status_code == 307
        assert http.get("/v1/sessions").status_code == 401
        # Only reading is public: nothing under /ui/ takes a write without a key.
        assert http.post("/ui/", json={}).status_code in (401, 405)


def test_the_page_serves_only_its_own_files(client: httpx.Client) -> None:
    assert client.get("/ui/assets/nothing.js").status_code == 404
    assert client.get("/ui/%2E%2E/api/web.py").status_code == 404
    assert client.get("/ui/../api/web.py").status_code in (404, 307)
    assert client.get("/ui/assets/..%2F..%2Fapi%2Fweb.py").status_code == 404


def _sources_digest() -> str:
    # The digest web/build.mjs writes into BUILD.json: sorted paths, each path and its bytes.
    files = ["build.mjs", "package.json", "package-lock.json"]
    files += [f"src/{p.name}" for p in (WEB / "src").iterdir()]
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update((WEB / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


@pytest.mark.skipif(not WEB.is_dir(), reason="the page's sources are not in this checkout")
def test_the_built_page_is_built_from_the_current_sources() -> None:
    built = json.loads((PAGE_DIR / "BUILD.json").read_text())["sources_sha256"]
    assert built == _sources_digest(), (
        "src/chatd/web is older than web/: run `bash scripts/build-web` and commit the result"
    )


def test_the_wheel_ships_the_built_page(tmp_path: Path) -> None:
    uv = next(iter(sorted(ROOT.glob(".cache/uv-*/bin/uv"))), None) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (bash scripts/test installs it)")
    subprocess.run(
        [str(uv), "build", "-q", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("chatd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for built in PAGE_DIR.rglob("*"):
        if built.is_file():
            assert f"chatd/web/{built.relative_to(PAGE_DIR).as_posix()}" in names
    assert not any(n.startswith("web/") or "node_modules" in n for n in names)
