"""The shipped price table: every model chatd picks by default has a price."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from chatd.prices import load_prices
from chatd.providers.anthropic import DEFAULT_MODEL
from chatd.providers.demo import DEMO_MODEL
from chatd.providers.openai_compat import PRESETS

DEFAULT_MODELS = {
    "anthropic": DEFAULT_MODEL,
    "demo": DEMO_MODEL,
    **{name: preset.model for name, preset in PRESETS.items() if preset.model},
}


@pytest.mark.parametrize(("provider", "model"), sorted(DEFAULT_MODELS.items()))
def test_every_default_model_has_a_shipped_price(provider: str, model: str) -> None:
    table = load_prices()
    assert table.find(model) is not None, f"{provider}'s default model {model!r} has no price"
    assert table.find(f"{provider}/{model}") is not None


def test_the_shipped_table_says_where_its_prices_come_from() -> None:
    raw = json.loads(resources.files("chatd").joinpath("prices.json").read_text("utf-8"))
    assert "pricing" in raw["_source"]
    assert "2025" in raw["_source"]
    assert "_source" not in load_prices().prices
