"""Shared fixtures: the fake LLM upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chatd.testing.fake_upstream import FakeUpstream


@pytest.fixture(scope="session")
def _fake_upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def fake_upstream(_fake_upstream_server: FakeUpstream) -> FakeUpstream:
    """Yield the session's fake upstream with no recorded requests or fail_times counts."""
    _fake_upstream_server.clear()
    return _fake_upstream_server
