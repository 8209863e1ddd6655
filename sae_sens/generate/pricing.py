"""What requests cost: a price table for OpenAI models and a rough token estimate for dry runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlsplit

# USD per 1M tokens: (input, output) for standard processing, then (input, output) through the Batch
# API (``--batch``: half the standard price on OpenAI's list). Dated snapshots
# ("gpt-4o-mini-2024-07-18") match by longest prefix.
OPENAI_PRICES: dict[str, tuple[float, float, float, float]] = {
    "gpt-5": (1.25, 10.00, 0.625, 5.00),
    "gpt-5-mini": (0.25, 2.00, 0.125, 1.00),
    "gpt-5-nano": (0.05, 0.40, 0.025, 0.20),
    "gpt-4.1": (2.00, 8.00, 1.00, 4.00),
    "gpt-4.1-mini": (0.40, 1.60, 0.20, 0.80),
    "gpt-4.1-nano": (0.10, 0.40, 0.05, 0.20),
    "gpt-4o": (2.50, 10.00, 1.25, 5.00),
    "gpt-4o-mini": (0.15, 0.60, 0.075, 0.30),
    "gpt-4-turbo": (10.00, 30.00, 5.00, 15.00),
    "gpt-3.5-turbo": (0.50, 1.50, 0.25, 0.75),
    "o3": (2.00, 8.00, 1.00, 4.00),
    "o3-mini": (1.10, 4.40, 0.55, 2.20),
    "o4-mini": (1.10, 4.40, 0.55, 2.20),
}


@dataclass(frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) * self.input_per_1m + (completion_tokens or 0) * self.output_per_1m) / 1e6


FREE = Price(0.0, 0.0)


def is_openai_url(base_url: str | None) -> bool:
    return not base_url or (urlsplit(base_url).hostname or "").endswith("openai.com")


def lookup_price(kind: str, model: str, base_url: str | None = None,
                 price_in: float | None = None, price_out: float | None = None, *, batch: bool = False) -> Price | None:
    """The price of one model, or None when unknown; ``batch``: the Batch API's. Explicit prices win
    (they are the prices of the mode in use); the table applies only to OpenAI's own API (a local
    server may serve any name); local hf models are free."""
    if price_in is not None and price_out is not None:
        return Price(price_in, price_out)
    if kind == "hf":
        return FREE
    if kind != "openai" or not is_openai_url(base_url):
        return None
    matches = [name for name in OPENAI_PRICES if model == name or model.startswith(name + "-")]
    if not matches:
        return None
    row = OPENAI_PRICES[max(matches, key=len)]
    return Price(*(row[2:] if batch else row[:2]))


def estimate_tokens(text: str) -> int:
    """About four characters per token for English with GPT-style tokenizers."""
    return max(1, math.ceil(len(text) / 4))
