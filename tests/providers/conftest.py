"""Providers built on the official SDKs, pointed at the fake upstream over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from chatd.providers.anthropic import AnthropicProvider
from chatd.providers.base import Provider, ProviderOptions
from chatd.providers.openai_compat import OpenAICompatProvider
from chatd.testing.fake_upstream import FakeUpstream


def make_provider(kind: str, url: str, key: str = "test-key") -> Provider:
    """Build the named SDK provider against a fake upstream URL."""
    if kind == "anthropic":
        return AnthropicProvider(ProviderOptions("anthropic", key, url, None, 10))
    return OpenAICompatProvider(ProviderOptions("openai", key, url + "/v1", "gpt-test", 10))


ProviderFactory = Callable[..., Provider]


@pytest.fixture
async def make_sdk_provider() -> AsyncIterator[ProviderFactory]:
    """Yield a factory of SDK providers; each is closed after the test."""
    made: list[Provider] = []

    def factory(kind: str, url: str, key: str = "test-key") -> Provider:
        made.append(make_provider(kind, url, key))
        return made[-1]

    yield factory
    for p in made:
        await p.aclose()


@pytest.fixture(params=["anthropic", "openai"])
async def provider(
    request: pytest.FixtureRequest, fake_upstream: FakeUpstream
) -> AsyncIterator[Provider]:
    """Yield each SDK provider in turn."""
    p = make_provider(request.param, fake_upstream.url)
    yield p
    await p.aclose()
