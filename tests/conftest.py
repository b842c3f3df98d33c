"""Shared fixtures: the fake LLM upstream, real PostgreSQL and Redis servers, Chromium."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatd.testing.fake_upstream import FakeUpstream
from chatd.testing.postgres import PostgresServer
from chatd.testing.redis import RedisServer
from chatd.testing.watch import install as watch_servers

_database_numbers = itertools.count(1)
# The system's browser: tests never download one (no `playwright install`).
CHROMIUM = Path("/usr/bin/chromium")
SERVER_WATCH = watch_servers()


@pytest.fixture(autouse=True)
def _no_server_error(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose server answered 5xx or logged a traceback, unless it allows 5xx."""
    errors = SERVER_WATCH.server_errors()
    del SERVER_WATCH.tracebacks[:]
    yield
    if request.node.get_closest_marker("allow_5xx") is not None:
        return
    errors = SERVER_WATCH.server_errors() - errors
    logged = [f"{r.name}: {r.getMessage()}" for r in SERVER_WATCH.tracebacks]
    if errors or logged:
        pytest.fail(
            f"the server under test answered {errors} 5xx and logged {len(logged)} "
            f"traceback(s): {logged} (mark the test allow_5xx if it provokes them)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def _fake_upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def fake_upstream(_fake_upstream_server: FakeUpstream) -> FakeUpstream:
    """Yield the session's fake upstream with no recorded requests or fail_times counts."""
    _fake_upstream_server.clear()
    return _fake_upstream_server


@pytest.fixture(scope="session")
def postgres_installed() -> None:
    """Skip the test when PostgreSQL is not installed; in CI (CI=true) fail it instead."""
    if PostgresServer.available():
        return
    reason = "PostgreSQL binaries not found (apt-get install postgresql)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the PostgreSQL tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server(postgres_installed: None) -> Iterator[PostgresServer]:
    """Yield one PostgreSQL server for the whole test session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """Yield the URL of a fresh, empty database on the session's server; dropped afterwards."""
    name = f"test_{next(_database_numbers)}"
    yield postgres_server.create_database(name)
    if postgres_server.running:
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Yield one Redis server for the whole session; skip (fail in CI) if not installed."""
    if not RedisServer.available():
        reason = "redis-server not found (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the Redis tests", pytrace=False)
        pytest.skip(reason)
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """Return the URL of the session's Redis server, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Return Chromium's executable; skip the test if it is missing (fail it in CI)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"{CHROMIUM} not found (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


def _wait_for_fresh_minute(margin_s: float = 20.0) -> None:
    # Per-minute limits are fixed clock windows: a burst that straddles a minute boundary
    # is counted in two windows and rightly gets more through than the test expects.
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.05)


@pytest.fixture
def fresh_minute() -> Callable[[float], None]:
    """Return a wait that leaves at least margin_s seconds before the clock's next minute."""
    return _wait_for_fresh_minute
