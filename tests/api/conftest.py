"""The real app under uvicorn on a free port, its provider pointed at the fake upstream."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Request, sync_playwright

from chatd.api.app import create_app
from chatd.api.state import state
from chatd.config import Settings
from chatd.keys import KeyLimits, new_key
from chatd.store import SqlKeyStore, open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.testing.watch import WATCH

COMPLETIONS_CAP = 2 * 1024 * 1024
ALLOWED_ORIGIN = "http://allowed.test"


@dataclass
class Server:
    """A running chatd: its base URL and the settings it was built with."""

    url: str
    settings: Settings


def provider_env(upstream: FakeUpstream) -> dict[str, str]:
    """Return the environment that points the Anthropic provider at the fake upstream."""
    return {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": upstream.url}


@contextmanager
def running(settings: Settings, env: dict[str, str]) -> Iterator[Server]:
    """Run the app under uvicorn in a thread until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings, env=env)
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("chatd did not start")
        time.sleep(0.01)
    try:
        with WATCH.server(lambda: state(app).metrics.server_errors):
            yield Server(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def make_settings(db: Path, **overrides: Any) -> Settings:
    """Return test settings: Anthropic at the fake upstream, no retries, a SQLite file."""
    values: dict[str, Any] = {
        "provider": "anthropic",
        "model": "test-model",
        "database_url": f"sqlite:///{db}",
        "retry_max_attempts": 1,
        "cors_origins": [ALLOWED_ORIGIN],
        "max_completions_body_bytes": COMPLETIONS_CAP,
        "sse_ping_s": 0.2,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def server(
    _fake_upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Yield one chatd for the whole session; tests keep apart by using their own session ids."""
    db = tmp_path_factory.mktemp("api") / "chatd.db"
    with running(make_settings(db), provider_env(_fake_upstream_server)) as started:
        yield started


@pytest.fixture
def make_server(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Yield a factory of servers with settings of their own, stopped after the test."""
    stack: list[Any] = []

    def factory(**overrides: Any) -> Server:
        context = running(
            make_settings(tmp_path / f"chatd{len(stack)}.db", **overrides),
            provider_env(fake_upstream),
        )
        stack.append(context)
        return context.__enter__()

    yield factory
    for context in reversed(stack):
        context.__exit__(None, None, None)


@pytest.fixture
def client(server: Server, fake_upstream: FakeUpstream) -> Iterator[httpx.Client]:
    """Yield an HTTP client of the shared server (the fake upstream's log cleared)."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def sid() -> str:
    """Return a session id no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


def create_key(server: Server, user: str, **options: Any) -> str:
    """Store a key for user in the server's database (as `chatd keys create` would); return it."""
    return asyncio.run(_create_key(server.settings.database_url, user, **options))


async def _create_key(database_url: str, user: str, **options: Any) -> str:
    limit_names = ("rpm", "tpm", "tokens_per_day", "budget_usd_per_day")
    limits = KeyLimits(**{k: options.pop(k) for k in limit_names if k in options})
    key, digest, prefix = new_key()
    store = await open_store(database_url)
    try:
        await SqlKeyStore(store.db).create_key(user, digest, prefix, limits=limits, **options)
    finally:
        await store.close()
    return key


KeyMaker = Callable[..., str]


@pytest.fixture(scope="session")
def make_key() -> KeyMaker:
    """Return create_key: make_key(server, user, admin=..., rpm=..., expires_at=...) -> key."""
    return create_key


ServerStarter = Callable[..., Any]


@pytest.fixture(scope="session")
def start_server(_fake_upstream_server: FakeUpstream) -> ServerStarter:
    """Return start(db, **settings): a context manager running a chatd on the fake upstream."""

    def start(db: Path, **overrides: Any) -> Any:
        return running(make_settings(db, **overrides), provider_env(_fake_upstream_server))

    return start


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Where the browser tests leave their screenshots for a person to look at.
SCREENSHOTS = Path(
    os.environ.get("CHATD_SCREENSHOTS", Path(__file__).parents[2] / "test-results" / "screenshots")
)


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    """Yield the system's headless Chromium for one test module.

    Not for the whole run: Playwright's sync API keeps an event loop running in this thread
    while it is open, and the async tests after it need the thread's loop to themselves.
    """
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@dataclass
class PageLog:
    """What a page did that a test may forbid: errors, console lines, dialogs, requests."""

    origin: str
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def elsewhere(self) -> list[str]:
        """Return the requests that went anywhere but chatd."""
        return [u for u in self.requests if not u.startswith(self.origin + "/")]

    def watch(self, page: Page) -> Page:
        """Record the page's errors, console warnings, dialogs and requests."""

        def console(message: ConsoleMessage) -> None:
            if message.type in ("error", "warning"):
                self.console.append(f"{message.type}: {message.text}")

        def dialog(box: Dialog) -> None:
            self.dialogs.append(f"{box.type}: {box.message}")
            box.dismiss()

        def request(asked: Request) -> None:
            self.requests.append(asked.url)

        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", console)
        page.on("dialog", dialog)
        page.on("request", request)
        return page


PageOpener = Callable[..., tuple[Page, PageLog]]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[PageOpener]:
    """Return open(server, path="/ui/", **context options): a watched page, closed after."""
    contexts: list[Any] = []

    def open_(server: Server, path: str = "/ui/", **options: Any) -> tuple[Page, PageLog]:
        context = browser.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        log = PageLog(server.url)
        log.watch(page)
        page.goto(server.url + path)
        return page, log

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def screenshot() -> Callable[[Page, str], Path]:
    """Return shot(page, name): save a full-page PNG under test-results/screenshots."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page: Page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=path, full_page=True)
        return path

    return shot


def import_session(server: Server, session_id: str, exchanges: list[tuple[str, str]]) -> None:
    """Store a session with these user/assistant exchanges, as an import does."""
    doc = {
        "format": "chatd.session/1",
        "session_id": session_id,
        "turns": [
            {
                "state": "complete",
                "stop_reason": "end_turn",
                "model": "test-model",
                "provider": "anthropic",
                "usage": {"input_tokens": 12, "output_tokens": 34},
                "created_at": "2026-01-01T00:00:00+00:00",
                "messages": [
                    {"role": "user", "parts": [{"type": "text", "text": user}]},
                    {"role": "assistant", "parts": [{"type": "text", "text": reply}]},
                ],
            }
            for user, reply in exchanges
        ],
    }
    answer = httpx.post(f"{server.url}/v1/sessions/import", json=doc)
    assert answer.status_code == 201, answer.text


@pytest.fixture(scope="session")
def imported() -> Callable[[Server, str, list[tuple[str, str]]], None]:
    """Return import_session(server, id, [(user, reply), ...]): a stored conversation."""
    return import_session
