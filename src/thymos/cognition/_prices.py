"""What a model turn costs: a price table in USD per million tokens, in and out.

The table below holds list prices of common models (as published by their vendors; check them:
prices change). `THYMOS_PRICES` overrides or extends it with a JSON object whose keys are
`provider/model`, `model` or `provider` (the most specific match wins) and whose values are
`{"input": USD_PER_MILLION_TOKENS, "output": USD_PER_MILLION_TOKENS}`. A model with no price
costs nothing (its tokens are still counted). Spend is recorded in millicents (1 USD =
100,000), rounded up per turn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thymos.core import Usage

MILLICENTS_PER_USD = 100_000

DEFAULT_PRICES: Mapping[str, tuple[float, float]] = {
    "anthropic/claude-sonnet-4-5": (3.0, 15.0),
    "anthropic/claude-opus-4-1": (15.0, 75.0),
    "anthropic/claude-haiku-4-5": (1.0, 5.0),
    "openai/gpt-4o": (2.5, 10.0),
    "openai/gpt-4o-mini": (0.15, 0.6),
    "openai/gpt-4.1": (2.0, 8.0),
    "openai/gpt-4.1-mini": (0.4, 1.6),
    "deepseek/deepseek-chat": (0.27, 1.1),
    "mistral/mistral-large-latest": (2.0, 6.0),
    "groq/llama-3.3-70b-versatile": (0.59, 0.79),
}


class PricesError(ValueError):
    """`THYMOS_PRICES` that is not a table of prices."""


@dataclass(frozen=True, slots=True)
class Prices:
    table: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @staticmethod
    def with_overrides(overrides: Any) -> Prices:
        if not isinstance(overrides, dict):
            raise PricesError("THYMOS_PRICES must be a JSON object of prices by model")
        table = dict(DEFAULT_PRICES)
        for key, value in overrides.items():
            if not (
                isinstance(value, dict)
                and set(value) == {"input", "output"}
                and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1e6
                    for v in value.values()
                )
            ):
                raise PricesError(
                    f'THYMOS_PRICES[{key!r}] must be {{"input": USD, "output": USD}} per '
                    "million tokens"
                )
            table[str(key)] = (float(value["input"]), float(value["output"]))
        return Prices(table)

    def per_million(self, provider: str, model: str | None) -> tuple[float, float]:
        for key in (f"{provider}/{model}", model or "", provider):
            if key in self.table:
                return self.table[key]
        return (0.0, 0.0)

    def millicents(self, provider: str, model: str | None, usage: Usage) -> int:
        price_in, price_out = self.per_million(provider, model)
        usd = (usage.input_tokens * price_in + usage.output_tokens * price_out) / 1_000_000
        return math.ceil(usd * MILLICENTS_PER_USD)
