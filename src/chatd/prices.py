"""What a call costs: a price table per model, shipped with chatd and overridable.

Prices are USD per million tokens. A model is found by its exact name, else by the longest
table entry it starts with (so dated names like "claude-sonnet-4-5-20250929" match), with a
"provider/" prefix ignored. An unknown model costs 0, with one warning per model and process.
The shipped table (prices.json) says under "_source" which pricing pages it was read from, and when.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from chatd.errors import ConfigError
from chatd.types import Usage

log = logging.getLogger("chatd.prices")

MICRO = 1_000_000  # costs are counted in micro-dollars: integers for the limit counters


@dataclass(frozen=True, slots=True)
class Price:
    """One model's prices in USD per million tokens."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0
    # OpenAI counts cached tokens inside prompt_tokens; Anthropic reports them apart.
    input_includes_cache: bool = False

    def micro_usd(self, usage: Usage) -> int:
        """Return what this usage costs, in micro-dollars, rounded up."""
        fresh = usage.input_tokens
        if self.input_includes_cache:
            fresh = max(0, fresh - usage.cache_read_tokens)
        # Per million tokens, in micro-dollars: the price in USD per token, times a million.
        total = (
            fresh * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
        )
        return int(-(-total // 1))


class PriceTable:
    """Prices by model name, with the lookup rules above."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)
        self._longest_first = sorted(self.prices, key=len, reverse=True)
        self._warned: set[str] = set()

    def find(self, model: str) -> Price | None:
        """Return the price of a model, or None if the table has no entry for it."""
        name = model.rpartition("/")[2]
        found = self.prices.get(name)
        if found is not None:
            return found
        for entry in self._longest_first:
            if name.startswith(entry):
                return self.prices[entry]
        return None

    def priced(self, model: str, usage: Usage) -> int | None:
        """Return what a call cost in micro-dollars, or None when the model has no price."""
        price = self.find(model)
        return None if price is None else price.micro_usd(usage)

    def micro_usd(self, model: str, usage: Usage) -> int:
        """Return what a call cost in micro-dollars; 0, and a warning once, for unknown models."""
        price = self.find(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price known for model %r: its calls count as costing 0", model)
            return 0
        return price.micro_usd(usage)


def load_prices(
    overrides: Mapping[str, Mapping[str, Any]] | None = None, file: Path | None = None
) -> PriceTable:
    """Return the shipped table, updated from a JSON file, then from inline overrides."""
    raw: dict[str, Any] = json.loads(
        resources.files("chatd").joinpath("prices.json").read_text("utf-8")
    )
    if file is not None:
        try:
            raw.update(json.loads(file.read_text("utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the price file {file}: {exc}") from None
    raw.update(overrides or {})
    table: dict[str, Price] = {}
    for model, entry in raw.items():
        if model.startswith("_"):
            continue
        try:
            table[model] = Price(**entry)
        except TypeError as exc:
            raise ConfigError(f"bad price for {model!r}: {exc}") from None
    return PriceTable(table)
